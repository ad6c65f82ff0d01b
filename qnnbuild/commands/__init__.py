"""What users do with a build: report, release, verify/gc/clean, infer, doctor."""

"""qnnbuild's version: recorded in lock files and part of the plan cache's key (the package root re-exports it)."""

VERSION = "0.1.0"

"""`python -m qnnbuild` is the same as the `qnnbuild` command."""

from qnnbuild.cli import main

raise SystemExit(main())

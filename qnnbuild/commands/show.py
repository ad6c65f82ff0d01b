"""`qnnbuild dag` and `qnnbuild schema`: a recipe's stage graph, and the schema every recipe is checked against."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def cmd_dag(args: argparse.Namespace) -> int:
    from qnnbuild.engine.recipe.plan import render
    from qnnbuild.engine.recipe.plancache import load_plan

    sys.stdout.write(render(load_plan(args.recipe, Path(), cached=False), args.format))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from qnnbuild.engine.recipe.schema import recipe_schema

    print(json.dumps(recipe_schema(), indent=2))
    return 0

"""``lorakit train``: the flags of ``RunConfig`` onto ``lorakit.runs.train_run``, with the process's own settings.

The run itself (its folder, resume, metrics, card, plot) is ``lorakit.runs``'; this command adds what only a command
line may do: the process hooks (torchrun's process group, glibc's allocator: ``lorakit.cli.process``), the Hub's
offline mode when the Hub cannot be reached, and removing the folder of a run that failed before it began.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any

from lorakit.cli.common import config_flags, offline_unless_hub_reachable, train_config_from
from lorakit.cli.process import TRAIN_HOOKS
from lorakit.errors import LorakitError
from lorakit.runs.config import RunConfig, output_path
from lorakit.runs.folder import CARD, METRICS, PLOT, RunFolder
from lorakit.runs.job import train_run


def add_parser(sub: Any) -> None:
    p = sub.add_parser("train", help="train a LoRA adapter (no flags: the built-in demo's training)")
    config_flags(p, RunConfig)
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    config = train_config_from(args, RunConfig)
    offline_unless_hub_reachable(config.data, config.eval_data)
    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 writes the run's files
    if config.output is None and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        config = dataclasses.replace(config, output=str(output_path(config)))
    output = Path(config.output) if config.output else None
    fresh = output is not None and not output.exists()
    try:
        result = train_run(config, TRAIN_HOOKS)
    except LorakitError:
        if main_process and fresh and output:  # a mistake found before training wrote anything leaves no folder
            RunFolder(output).discard_if_unused()
        raise
    if main_process:
        print(f"adapter, {PLOT}, {METRICS} and {CARD} in {result.output}/")
    return 0

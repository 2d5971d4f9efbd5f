"""A training run: its folder and the job that fills it, between the library's parts and the command line.

``RunFolder`` (``folder``) owns every file of a run folder, its name and its reading and writing; ``origin`` says
which base model and system prompt an adapter folder wants; ``card`` draws the loss curve and writes the model card;
``RunConfig`` (``config``) holds a run's settings; a ``Recipe`` (``recipe``) is how a run trains, ``Supervised``
fine-tuning so far; ``train_run`` (``job``) runs a whole training job into a run folder. ``serve`` and ``cli`` read
runs through this package; nothing below it knows a run folder.

```python
from lorakit.runs import RunConfig, train_run
result = train_run(RunConfig(data="my.jsonl", output="runs/mine", max_steps=100))
```
"""

from __future__ import annotations

from lorakit.runs.config import RunConfig
from lorakit.runs.folder import RunFolder
from lorakit.runs.job import RunHooks, RunResult, train_run
from lorakit.runs.recipe import Recipe, Supervised

__all__ = ["Recipe", "RunConfig", "RunFolder", "RunHooks", "RunResult", "Supervised", "train_run"]

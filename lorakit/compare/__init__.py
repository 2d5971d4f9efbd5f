"""``lorakit compare``: LoRA against full fine-tuning on a format task and a knowledge task, with forgetting.

``run.py`` trains each method (one ``lorakit train`` subprocess each, so its peak memory is its own) and
scores it; ``report.py`` writes report.md and the plots.
"""

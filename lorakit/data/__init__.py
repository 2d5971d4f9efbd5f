"""Generic data: record formats (``formats``: chat, completion, text), reading JSONL and other sources (``jsonl``,
``sources``), tokenisation with label masks (``tokenize``), datasets ready to train on (``dataset``) and batches,
padded or packed (``batching``). Nothing here knows a built-in task (``lorakit.tasks``)."""

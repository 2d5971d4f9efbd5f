"""The built-in tasks: contacts (extract contact details as JSON: its generator and spec, shipped files in
``builtin/``, the demo's settings, the scorer ``contacts_metrics`` and the evaluation ``contacts_eval``) and
knowledge (new facts)."""

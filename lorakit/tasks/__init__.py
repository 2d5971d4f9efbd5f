"""The built-in tasks: contacts (extract contact details as JSON) and knowledge (new facts), with their generators,
shipped files (``builtin/``) and scorers."""

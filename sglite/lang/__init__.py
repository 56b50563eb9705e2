"""The sglite frontend language: IR, interpreter, choices, chat templates."""

"""One-stage dataset preparation: conversation formats, chat templates, tokenised .bin/.idx with loss masks."""

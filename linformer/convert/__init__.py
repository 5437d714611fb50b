"""Foreign checkpoint formats: HuggingFace BERT / RoBERTa directories, to and from the project."""

"""Importing checkpoints from other code bases (HuggingFace BERT / RoBERTa)."""

"""Using a pretrained encoder: export, loading (``load_pretrained``), embeddings and the embed CLI."""

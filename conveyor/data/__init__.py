"""The data plane: sources and safe ingest, image decoding, near-duplicates, curation, the leakage-free split and the data contracts."""

"""Writers: sources -> encode (in parallel workers) -> one ordered LMDB writer."""

"""RAG plane: the embedding deployment (and, next, ingestion into Milvus and retrieval)."""

"""The Batch API: files, batches, and the runner that answers them in the background."""

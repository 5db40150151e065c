"""Transfer: embeddings by Ray Data, kNN and linear probe on them, fine-tuning and the other supervised protocols
on Ray Train."""

"""Semi-supervised content-based retrieval of microscope images, including classes never labelled.

- `embedding`: the split backbone, the embedding network, triplet and autoencoder training alternated;
- `index`: a persisted faiss index of embeddings, searched with query expansion;
- `evaluate`: `evaluate_retrieval`, the protocol of `semnb eval retrieve` (leave-one-class-out too);
- `viz` and `explore`: the figures and the retrieval browser of notebook 07.

Taught in: 07_retrieval.
"""
from semnb.retrieval.embedding import METHODS, RetrievalConfig, TrainedEmbedding, train_embedding
from semnb.retrieval.evaluate import evaluate_retrieval
from semnb.retrieval.index import ArchiveIndex, RetrievalIndex, build_index_from_shards
from semnb.retrieval.model import RetrievalModel, fit_retrieve

__all__ = ["ArchiveIndex", "build_index_from_shards", "RetrievalModel", "fit_retrieve", "METHODS", "RetrievalConfig", "RetrievalIndex", "TrainedEmbedding", "evaluate_retrieval",
           "train_embedding"]

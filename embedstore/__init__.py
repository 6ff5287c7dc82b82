"""embedstore: frozen pretrained encoders -> a local DuckDB + FAISS feature store -> heads that refit in seconds.

    import embedstore
    store = embedstore.open("./mystore")
    store.ingest("train.tsv", dataset="sst2", encoder="minilm", text_column="sentence", label_column="label")
    X, y = store.features("sst2", encoder="minilm", label="label")
    hits = store.search("sst2", "a warm, funny film", k=5)
"""

from embedstore.errors import EmbedstoreError
from embedstore.facade import Store, open
from embedstore.store.catalog import EncoderRecord

__version__ = "0.1.0"
__all__ = ["EmbedstoreError", "EncoderRecord", "Store", "open", "__version__"]

"""embedstore on Ray Data, for users who already live in Ray: `embed_dataset(ds, encoder)` adds the vectors that
`embedstore ingest` would store (same encoder classes, same fingerprint). Ingesting into a store on Ray is
`store.ingest(..., engine="ray")` or `embedstore ingest ... --engine ray`. Needs `pip install 'embedstore[ray]'`."""

from embedstore.ingest.ray_engine import RayOptions, embed_dataset, held_hashes

__all__ = ["RayOptions", "embed_dataset", "held_hashes"]

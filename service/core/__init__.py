"""The domain core: settings, database, states, deletions, registry, audit, keys, signing, certificates,
queue. Both edges (the HTTP API and the workers) import it; it imports neither of them, nor torch."""

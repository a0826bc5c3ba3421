"""Pure OCI vocabulary: digests, names, media types, manifests. No I/O."""

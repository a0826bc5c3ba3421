"""The metadata store: its interface, its etcd implementation, and its key layout."""

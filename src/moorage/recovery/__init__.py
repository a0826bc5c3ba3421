"""Join, remove, repair, emergency repair, backup and restore: operations on a cluster."""

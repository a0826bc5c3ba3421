"""The replica process at the top of the layers: it assembles one replica (its etcd member,
its background jobs, its HTTP server) and runs it. `process` runs in the replica process,
`worker` in each of its API workers."""

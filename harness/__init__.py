"""One harness for running Moorage replicas and clusters, shared by tests/, chaos/ and bench/.

- `harness.process`: free ports, the `moorage` command, pid files, signals, log tails.
- `harness.replica`: `Replica`, one `moorage run` process started directly.
- `harness.cluster`: `Node` and `Cluster`, replicas built with the real commands (`install`,
  `join`, `start`, `stop`, `destroy`, `status`), on loopback or in network namespaces.
- `harness.netns`: `NetLab`, one network namespace per replica so the network can be cut.
"""

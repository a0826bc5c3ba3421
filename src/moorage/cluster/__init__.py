"""Replica supervision: the etcd child process, membership, health, scenario diagnosis."""

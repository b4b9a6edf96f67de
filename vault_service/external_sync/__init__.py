"""Credentials synchronized from external vaults (OpenBao / HashiCorp Vault): the source's rules (:mod:`.source`),
the provider's client (:mod:`.hashicorp`), one synchronization (:mod:`.synchronizer`) and the schedule every replica
runs (:mod:`.scheduler`)."""

"""The vault: the credential service, its engine port and the `credvault` console script."""

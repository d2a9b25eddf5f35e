"""Commands to nodes: building them, following their acks, the ledger, the hub's wire identity."""

"""Repair tools for the people on call: `paynotify status`, `dlq list|redrive`, `replay`,
`requery` (docs/operations.md, "Repair tools")."""

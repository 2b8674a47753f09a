"""The loops: the tracker (a façade over dispatcher, pollers, committer and journal),
discovery, the webhook notifier and `wait`."""

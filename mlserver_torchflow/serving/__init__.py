"""The MLServer side: the runtime class, its log lines and its metrics."""

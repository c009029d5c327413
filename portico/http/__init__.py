"""HTTP/1.1 on the wire: request targets, framing rules, the connection protocol."""

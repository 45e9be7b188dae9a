"""A network of hosts: servers (the control plane: API, placement, leader), an agent on each
host running its workers, the state in PostgreSQL. No message passes through a server."""

"""Which sockets a config needs, and which listen line gives each its options."""

from __future__ import annotations

from portico.config import loader
from portico.process.sockets import plan


def planned(servers: str) -> dict[str, int]:
    config = loader.load_text("events {} http { " + servers + " }", "/t.conf", "/")
    return {str(listen): listen.backlog for listen in plan(config).values()}


def test_the_first_line_of_an_address_gives_its_options() -> None:
    assert planned(
        "server { listen 127.0.0.1:8080 backlog=10 default_server; }"
        " server { listen 127.0.0.1:8080; server_name b; }"
    ) == {"127.0.0.1:8080": 10}


def test_a_wildcard_takes_its_own_line_over_the_addresses_folded_into_it() -> None:
    assert planned(
        "server { listen 127.0.0.1:8080 backlog=10; }"
        " server { listen 8080 backlog=20; server_name b; }"
        " server { listen 127.0.0.2:8080; server_name c; }"
    ) == {"*:8080": 20}


def test_distinct_addresses_get_distinct_sockets() -> None:
    assert planned(
        "server { listen 127.0.0.1:8080 backlog=10; }"
        " server { listen 127.0.0.2:8080 backlog=20; server_name b; }"
    ) == {"127.0.0.1:8080": 10, "127.0.0.2:8080": 20}

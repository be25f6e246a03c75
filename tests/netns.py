"""Hosts of their own on this machine, for tests of what crosses a network: network
namespaces (`ip netns`) on one bridge, made and removed by the test (root and `ip` only).

Each namespace has one veth end on the bridge, with an address of the bridge's /24, and its
own loopback: a process started in it (`Netns.prefix(n)`) reaches the other namespaces and
the bridge's own address, nothing else. The services of the host that listen on loopback
only (PostgreSQL, Redis) are reached through `Forwarder`s on the bridge's address.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
import uuid
from urllib.parse import urlsplit, urlunsplit


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Netns:
    """A bridge `tdn<tag>` with address `<subnet>.1/24`, and namespaces added to it one by
    one: namespace n has the address `<subnet>.<n + 2>` on its interface `ifname(n)`."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:5]
        self.tag = tag
        # A /24 no interface of the host has yet (two test processes build theirs at once).
        used = subprocess.run(
            ["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=False
        ).stdout
        free = [n for n in range(1, 251) if f" 10.78.{n}." not in used]
        self.subnet = f"10.78.{free[int(tag, 16) % len(free)]}"
        self.bridge = f"tdn{tag}"
        self.host_address = f"{self.subnet}.1"
        self.names: list[str] = []

    @staticmethod
    def available() -> bool:
        return os.geteuid() == 0 and shutil.which("ip") is not None

    def up(self) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.host_address}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def add(self) -> int:
        """A new namespace on the bridge; its number."""
        n = len(self.names)
        name = f"tdn{self.tag}n{n}"
        ip("netns", "add", name)
        self.names.append(name)
        outside = f"tdn{self.tag}h{n}"
        ip("link", "add", outside, "type", "veth", "peer", "name", self.ifname(n), "netns", name)
        ip("link", "set", outside, "master", self.bridge, "up")
        ip("-n", name, "addr", "add", f"{self.address(n)}/24", "dev", self.ifname(n))
        ip("-n", name, "link", "set", self.ifname(n), "up")
        ip("-n", name, "link", "set", "lo", "up")
        return n

    def ifname(self, n: int) -> str:
        return f"tdn{self.tag}i{n}"

    def address(self, n: int) -> str:
        return f"{self.subnet}.{n + 2}"

    def prefix(self, n: int) -> tuple[str, ...]:
        """The command prefix that runs a program in namespace n (`ip netns exec` execs it:
        the program keeps the pid the caller sees)."""
        return ("ip", "netns", "exec", self.names[n])

    def down(self) -> None:
        for name in self.names:  # a namespace's veth ends go with it
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], check=False, capture_output=True)

    def through(self, url: str, forwarders: dict[int, Forwarder]) -> str:
        """`url` (a service on 127.0.0.1) as the namespaces reach it: at the bridge's address,
        through a forwarder to its port (made once per port)."""
        parts = urlsplit(url)
        assert parts.hostname in ("127.0.0.1", "localhost") and parts.port, url
        if parts.port not in forwarders:
            forwarders[parts.port] = Forwarder(
                (self.host_address, parts.port), ("127.0.0.1", parts.port)
            )
        netloc = parts.netloc.rsplit("@", 1)
        host = f"{self.host_address}:{parts.port}"
        netloc[-1] = host
        return urlunsplit(parts._replace(netloc="@".join(netloc)))


class Forwarder:
    """TCP from `listen` to `target`, both ways, in a thread of its own: the host's loopback
    services for the namespaces (each connection is a new connection to the target)."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.listen, self.target = listen, target
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._connect, self.listen[0], self.listen[1])
        )
        ready.set()
        self.loop.run_forever()
        server.close()
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def remote_addresses(pid: int) -> set[str]:
    """The IPv4 addresses that process `pid`'s TCP sockets are connected to, read in its own
    network namespace (`/proc/<pid>/net/tcp`: psutil reads the caller's)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = set()
    with open(f"/proc/{pid}/net/tcp") as table:
        next(table)
        for row in table:
            fields = row.split()
            remote, inode = fields[2], fields[9]
            if inode in inodes:
                packed = bytes.fromhex(remote.split(":")[0])[::-1]  # little-endian
                found.add(".".join(str(b) for b in packed))
    return found

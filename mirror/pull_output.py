"""The pull's bundle at -o: the one there already, the one assembled while the blobs come in,
and its naming at the end.

A rerun whose images are what the bundle at -o holds writes nothing: the file is hashed
while the images are planned (mirror.bundle.writer's Prehash) and compared with the layout
they make (`unchanged`). Otherwise an Assembler is opened on the layout and the fetcher tees
each blob into it as it arrives (mirror.fetch); at the end it is renamed into place, or, for
a .tar.zst or when an image failed after the layout was fixed, the bundle is written from
the store in one pass (mirror.bundle.contents). A stop leaves the previous bundle as it was,
unless the rename landed first: `named` then says what is in place.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from mirror.aio import to_the_end
from mirror.bundle.contents import bundle_layout, write_plans
from mirror.bundle.writer import Prehash, tar_size, unchanged
from mirror.fetch import Fetcher
from mirror.image import ImageSet
from mirror.progress import Progress
from mirror.pull_options import PullOptions
from mirror.registry.client import Client, SourceOf
from mirror.store.blobs import BlobStore
from mirror.store.iowork import IO_POOL


class Output:
    """The bundle at `opts.output` (none for a pull that only fills the cache)."""

    def __init__(self, client: Client, store: BlobStore, fetcher: Fetcher, opts: PullOptions,
                 progress: Progress, source_of: SourceOf, prehash: Prehash | None) -> None:
        self.client, self.store, self.fetcher, self.opts = client, store, fetcher, opts
        self.progress, self.source_of = progress, source_of
        # the bundle already there, hashed since the run began (pull_run): when the images
        # are what it holds, the rerun need not read it after (writer.unchanged)
        self.prehash = prehash
        # the bundle's digest once it is named at -o (and whether it was there already): a
        # stop that lands after the rename still has the report and lock file say so
        self.named: tuple[str, bool] | None = None

    async def lay_out(self, images: ImageSet) -> tuple[str | None, list[str] | None]:
        """The bundle for `images`: (its digest, None) when the file at -o holds exactly it
        already; else (None, the order its blobs are written in) with the Assembler open, or
        (None, None) when the bundle is written from the store at the end (.tar.zst, none)."""
        opts, f = self.opts, self.fetcher
        if opts.output is None or opts.compress:
            return None, None
        lay = bundle_layout(images, opts)
        there = await asyncio.get_running_loop().run_in_executor(  # hashes the file
            IO_POOL, unchanged, opts.output, lay.index, lay.inventory,
            tar_size(lay.index, lay.inventory, lay.manifests, lay.blobs, lay.docker),
            lay.docker, opts.volume_size, self.prehash)
        if there:
            return there, None
        self.stop_reading()  # the file will be replaced: no need to read on
        from mirror.bundle.assembler import Assembler  # a bundle to write: not a rerun's

        output = opts.output

        async def made() -> Assembler:  # its head reads the manifests back from the cache's
            return Assembler(  # store
                output, index_json=lay.index, inventory_json=lay.inventory,
                manifests=lay.manifests, blobs=[(b.digest, b.size) for b in lay.blobs],
                docker_json=lay.docker, volume_size=opts.volume_size)

        f.assembler = await self.client.reading(made, self.source_of)
        return None, [b.digest for b in lay.blobs]

    def stop_reading(self) -> None:
        if self.prehash is not None:
            self.prehash.stop()

    def abort(self) -> None:
        """The run failed or stopped: the bundle being assembled goes, none is named."""
        if self.fetcher.assembler is not None:
            self.fetcher.assembler.abort()

    async def finish(self, images: Callable[[], ImageSet], late: bool) -> tuple[str | None, bool]:
        """Name the assembled bundle, or write it from the store (a .tar.zst, or when an
        image failed after the layout was fixed: `late`; `images` then says what it
        carries). Runs off the event loop. Ctrl-C stops either cleanly: nothing is renamed
        into place, and an interrupted run leaves the previous bundle (if any) as it was."""
        opts, f = self.opts, self.fetcher
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        assembler = f.assembler
        if assembler is not None and not late:
            def name() -> tuple[str | None, bool]:
                return assembler.finish(stop), False  # None: stopped before the rename
        elif opts.output is not None:
            if assembler is not None:
                assembler.abort()
                f.assembler = None
            carried = images()

            def name() -> tuple[str | None, bool]:
                return write_plans(carried, self.store, opts, f.fetched, self.progress,
                                   stop=stop)
        else:
            return None, False
        fut: asyncio.Future[tuple[str | None, bool]] | None = None

        async def named() -> tuple[str | None, bool]:  # its head (written first) reads the
            nonlocal fut  # manifests back from the store
            fut = loop.run_in_executor(IO_POOL, name)
            return await to_the_end(fut, stop.set)

        try:
            return await self.client.reading(named, self.source_of)
        except asyncio.CancelledError:
            if fut is not None and fut.done() and not fut.cancelled() and \
                    fut.exception() is None:
                digest, same = fut.result()
                if digest is not None:  # renamed before it saw the stop: in place
                    self.named = (digest, same)
            raise

"""The CRC-32s a ``torch.save`` zip records for its stored records, checked in the pass that
reads the bytes anyway.

``audit``'s integrity check compares every stored record with the CRC-32 its central directory
holds, and its finite check reads every floating tensor's bytes: two passes over the file. A
record whose bytes are exactly one tensor's (torch's ``data/<n>`` storage records, almost every
byte of a checkpoint) is instead CRC'd by the finite pass, a cache-sized slice at a time between
its reads of the same slice, and only the records no tensor covers are read on their own
(``check_rest``). When any CRC differs, the caller reruns the whole integrity check in directory
order, so the first problem it reports is the one a separate pass would have reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ckpttools.entries import RawSource
from ckpttools.formats.writers.bytecopy import SourceFiles, crc_of_range


@dataclass
class RecordCrcs:
    """The records of one local zip whose CRC-32 is still to be checked.

    Attributes:
        path: the file, as the checkpoint reader names it in its ``RawSource`` ranges.
        pending: data offset of each record -> (its length, the CRC-32 the directory records).
        damaged: some record checked so far does not match its CRC-32.
    """

    path: str
    pending: dict[int, tuple[int, int]] = field(default_factory=dict)
    damaged: bool = False

    def add(self, offset: int, length: int, crc: int) -> bool:
        """Leave the record at ``offset`` to be checked later; False when a record already
        starts there (records that overlap), which the caller checks at once instead."""
        if offset in self.pending:
            return False
        self.pending[offset] = (length, crc)
        return True

    def expected(self, src: RawSource) -> int | None:
        """The CRC-32 of the record whose bytes are exactly ``src``, while it is unchecked."""
        rec = self.pending.get(src.offset) if src.path == self.path else None
        return rec[1] if rec is not None and rec[0] == src.length else None

    def settle(self, offset: int, value: int) -> None:
        """Record that the bytes of the record at ``offset`` have CRC-32 ``value``."""
        _, crc = self.pending.pop(offset)
        self.damaged |= value != crc

    def check_rest(self) -> bool:
        """Read and check every record no pass has settled; True when every record matched.

        Raises:
            CorruptCheckpointError: the file ends before a record does (it shrank meanwhile).
        """
        files = SourceFiles()
        try:
            for offset, (length, _) in list(self.pending.items()):
                self.settle(offset, crc_of_range(files, RawSource(self.path, offset, length)))
        finally:
            files.close()
        return not self.damaged

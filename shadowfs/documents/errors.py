"""The two exceptions of `shadowfs.documents`.

`DocumentError` is raised for anything wrong with a Writer Metadata Document or
a Backup Components Document: XML that is malformed or unsafe, an element or
attribute that is missing, unknown or badly typed, a value that breaks a rule
(a logical path, a file spec, a duplicate component), or a bad argument to a
builder method. Its message names the element and attribute (and the line,
when the document came from XML), so it can be shown to a user as it is.

`RangeError` is the subclass for range strings and ranges files (vss §12.5):
malformed, zero length, overlapping, overflowing 2**64, beyond the end of a
file, or a ranges file whose count disagrees with its length.

Both are defined in `shadowfs.errors` (kinds "bad_document" and "bad_ranges",
exit 1) with every other shadowfs error, and re-exported here.
"""

from __future__ import annotations

from shadowfs.errors import DocumentError, RangeError

__all__ = ["DocumentError", "RangeError"]

"""Objects whose attributes are fixed after construction (the packed kernel arguments).

A packed weight hands C pointers and sizes computed once; an attribute reassigned later
(``p.out_features = ...``, ``p.values = other_array``) would make the next call trust a
size or dtype its arrays do not have.  :class:`Frozen` refuses every attribute assignment
and deletion once :meth:`Frozen._freeze` has run; the classes' own code writes their lazy
caches and derived copies with ``object.__setattr__``.  Neither reads nor writes
``__dict__``: on CPython 3.11 touching an instance's ``__dict__`` makes it build a real
dict, after which every attribute read costs about three times as much (4.8 against
16.8-18 ns), measurable on a batch-1 kernel call that reads a dozen attributes.
"""

from __future__ import annotations


class Frozen:
    __slots__ = ()
    #: how to get an object with other attributes (the error's hint)
    _FROZEN_HINT = "build a new one"
    #: set on the instance by _freeze (the class value is the default)
    _frozen = False

    def __setattr__(self, name, value):
        if self._frozen:
            raise AttributeError(f"{type(self).__name__}.{name}: attributes are fixed after construction "
                                 f"(the C kernels trust them); {self._FROZEN_HINT}")
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        if self._frozen:
            raise AttributeError(f"{type(self).__name__}.{name}: attributes are fixed after construction "
                                 f"(the C kernels trust them); {self._FROZEN_HINT}")
        object.__delattr__(self, name)

    def _freeze(self):
        object.__setattr__(self, "_frozen", True)

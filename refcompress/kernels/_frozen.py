"""Objects whose attributes are fixed after construction (the packed kernel arguments).

A packed weight hands C pointers and sizes computed once; an attribute reassigned later
(``p.out_features = ...``, ``p.values = other_array``) would make the next call trust a
size or dtype its arrays do not have.  :class:`Frozen` refuses every attribute assignment
and deletion once :meth:`Frozen._freeze` has run; the classes' own code writes their lazy
caches and derived copies straight into ``__dict__``.
"""

from __future__ import annotations


class Frozen:
    __slots__ = ()
    #: how to get an object with other attributes (the error's hint)
    _FROZEN_HINT = "build a new one"

    def __setattr__(self, name, value):
        if self.__dict__.get("_frozen", False):
            raise AttributeError(f"{type(self).__name__}.{name}: attributes are fixed after construction "
                                 f"(the C kernels trust them); {self._FROZEN_HINT}")
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        if self.__dict__.get("_frozen", False):
            raise AttributeError(f"{type(self).__name__}.{name}: attributes are fixed after construction "
                                 f"(the C kernels trust them); {self._FROZEN_HINT}")
        object.__delattr__(self, name)

    def _freeze(self):
        self.__dict__["_frozen"] = True

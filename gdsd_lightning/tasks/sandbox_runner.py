"""Inside the sandbox, the candidate's side of the judge's channel (see sandbox_judge.py).

Stdlib only; written into the work dir and run as `python -I runner.py` with the channel socket
on stdin. It loads `solution.py` (then `setup.py`, MBPP's setup code, after it) as the module
`solution` and answers calls: ("call", reference, args, kwargs) -> ("value", plain answer) |
("object", index, type name) for what a class of the candidate's builds | ("raised", name,
message, is Exception) | ("not plain", type name). Every reply ends with (whether the
builtins were replaced, how many opens outside the work dir named a missing or unreadable path:
an audit hook counts those of Python's `open` / `os.open`). It deletes runner.py before the
candidate's code runs. Nothing here is trusted once the candidate's code has run: the judge
checks every message it receives, and decides every verdict itself.
"""

import builtins
import collections
import io
import os
import pickle
import socket
import struct
import sys
import types

PLAIN_SCALARS = (int, float, complex, str, bytes, bool, type(None))
CONTAINERS = (list, tuple, set, frozenset)
AS_DICT = (collections.Counter, collections.OrderedDict, collections.defaultdict)
ITERATORS = (map, filter, zip, enumerate, reversed, types.GeneratorType, type(iter([])), type(iter(())),
             type(iter(range(0))), type(iter({})), type(iter({}.values())), type(iter({}.items())), type(iter(set())),
             type(iter("")))
# A subclass of a plain type that defines one of these tries to change how the test compares it.
COMPARING = frozenset("__eq__ __ne__ __lt__ __le__ __gt__ __ge__ __bool__ __len__ __hash__ __abs__ __neg__ __round__ "
                      "__add__ __radd__ __sub__ __rsub__ __mul__ __rmul__ __truediv__ __rtruediv__ __floordiv__ "
                      "__mod__ __pow__ __float__ __int__ __index__ __complex__".split())
AS_BASE = {int: int.__int__, float: float.__float__, complex: complex.__complex__, str: str.__str__,
           bytes: bytes.__bytes__}


class NotPlain(Exception):
    pass


def plain(value, depth: int = 0):
    """`value` as plain data, as the test would have compared it: the stdlib's dict types become
    dicts, iterators tuples, and a subclass of a plain type that changes no comparison, truth or
    arithmetic method (a namedtuple, `class A(int): pass`) its base type, read from the base's
    own storage. Anything else raises NotPlain."""
    if depth > 200:
        raise NotPlain("a too deeply nested value")
    kind = type(value)
    if kind in PLAIN_SCALARS:
        return value
    if kind in CONTAINERS:
        return kind(plain(item, depth + 1) for item in value)
    if kind is dict or kind in AS_DICT:
        return {plain(k, depth + 1): plain(v, depth + 1) for k, v in dict.items(value)}
    if kind in ITERATORS:
        return tuple(plain(item, depth + 1) for item in value)
    base = next((b for b in (*AS_BASE, *CONTAINERS, dict) if isinstance(value, b)), None)
    if base is None or any(name in vars(cls) for cls in kind.__mro__[:kind.__mro__.index(base)] for name in COMPARING):
        raise NotPlain(kind.__name__)
    if base in AS_BASE:
        return AS_BASE[base](value)
    if base is dict:
        return {plain(k, depth + 1): plain(v, depth + 1) for k, v in dict.items(value)}
    return base(plain(item, depth + 1) for item in base.__iter__(value))


class Server:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.module = types.ModuleType("solution")
        self.objects: list = []
        self.builtins = dict(vars(builtins))
        self.failed_opens = 0
        self.work_dir = os.getcwd() + os.sep
        sys.addaudithook(self.audit)

    def audit(self, event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], (str, bytes)):     # an int is an fd
            path = os.path.abspath(os.fsdecode(args[0]))
            if not path.startswith(self.work_dir) and not os.access(path, os.R_OK):
                self.failed_opens += 1

    def patched(self) -> bool:
        current = vars(builtins)
        return any(current.get(name) is not value for name, value in self.builtins.items())

    def send(self, *message) -> None:
        payload = pickle.dumps((*message, (self.patched(), self.failed_opens)), protocol=5)
        self.sock.sendall(struct.pack("!I", len(payload)) + payload)

    def receive(self):
        header = self.read(4)
        if header is None:
            return None
        (size,) = struct.unpack("!I", header)
        unpickler = pickle.Unpickler(io.BytesIO(self.read(size)))
        unpickler.persistent_load = self.resolve
        return unpickler.load()

    def read(self, size: int):
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def resolve(self, reference):
        kind, key = reference
        return vars(self.module)[key] if kind == "name" else self.objects[key]

    def raised(self, error: BaseException) -> None:
        try:
            message = str(error)
        except BaseException:
            message = ""
        self.send("raised", type(error).__name__, message, isinstance(error, Exception))

    def load(self) -> None:
        sys.modules["solution"] = self.module
        names = vars(self.module)
        for path in ("solution.py", "setup.py"):     # MBPP's setup code after the program
            if os.path.exists(path):
                with open(path) as f:
                    exec(compile(f.read(), path, "exec"), names)

    def call(self, reference, args, kwargs) -> None:
        target = self.resolve(reference)
        result = target(*args, **kwargs)
        if isinstance(target, type):
            self.objects.append(result)
            self.send("object", len(self.objects) - 1, type(result).__name__)
            return
        try:
            answer = plain(result)
        except (NotPlain, RecursionError) as error:
            self.send("not plain", str(error) if isinstance(error, NotPlain) else "a too deeply nested value")
            return
        self.send("value", answer)

    def serve(self) -> None:
        self.send("hello")
        while (message := self.receive()) is not None:
            try:
                if message[0] == "load":
                    self.load()
                    self.send("loaded")
                else:
                    self.call(*message[1:])
            except BaseException as error:
                self.raised(error)


def main() -> None:
    os.remove(sys.argv[0])
    sock = socket.socket(fileno=os.dup(0))
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    Server(sock).serve()


main()

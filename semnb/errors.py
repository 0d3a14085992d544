"""One exception type for bad user input, so the CLI can print it as one clear line."""


class SemnbInputError(ValueError):
    """Bad input from the user: names the file or option and says how to fix it.

    The command line turns it into one line on stderr and a non-zero exit status;
    notebooks show it as an ordinary exception.
    """

    def __init__(self, what: str, problem: str, fix: str):
        self.what = str(what)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.what}: {problem}. Fix: {fix}")

"""Times in words, as the portal and the command line both show them ("5 min ago")."""


def ago_words(seconds: float) -> str:
    if seconds < 45:
        return "just now"
    for size, unit in ((86400 * 30, "mo"), (86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return "1 min ago"

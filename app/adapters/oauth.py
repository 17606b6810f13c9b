"""GitHub's OAuth web flow for portal sign-in: the authorize URL, and a code traded for the
login of the person who signed in. Every failure becomes `OAuthFailed`, whose message is safe
to show; the access token is used for one request and then forgotten."""

from __future__ import annotations

from urllib.parse import urlencode

import requests

from app.exceptions import OAuthFailed

TIMEOUT_SECONDS = 10


class GitHubOAuth:
    def __init__(self, *, web_url: str, api_url: str, client_id: str, client_secret: str,
                 timeout: float = TIMEOUT_SECONDS):
        self.web_url, self.api_url = web_url.rstrip("/"), api_url.rstrip("/")
        self.client_id, self._client_secret = client_id, client_secret
        self.timeout = timeout

    def authorize_url(self, *, redirect_uri: str, state: str) -> str:
        query = urlencode({"client_id": self.client_id, "redirect_uri": redirect_uri, "state": state,
                           "allow_signup": "false"})
        return f"{self.web_url}/login/oauth/authorize?{query}"

    def login_for(self, code: str, *, redirect_uri: str) -> str:
        """The GitHub login of whoever GitHub handed `code` to."""
        return self._login(self._exchange(code, redirect_uri))

    def _exchange(self, code: str, redirect_uri: str) -> str:
        if not code:
            raise OAuthFailed("GitHub sent no code")
        try:
            response = requests.post(
                f"{self.web_url}/login/oauth/access_token",
                data={"client_id": self.client_id, "client_secret": self._client_secret, "code": code,
                      "redirect_uri": redirect_uri},
                headers={"Accept": "application/json"},
                timeout=self.timeout,
            )
            body = response.json()
        except (requests.RequestException, ValueError):
            raise OAuthFailed("GitHub could not be reached") from None
        token = body.get("access_token") if isinstance(body, dict) else None
        if not token:
            error = body.get("error") if isinstance(body, dict) else None
            raise OAuthFailed(f"GitHub refused the code ({error or response.status_code})")
        return token

    def _login(self, access_token: str) -> str:
        try:
            response = requests.get(
                f"{self.api_url}/user",
                headers={"Authorization": f"Bearer {access_token}", "Accept": "application/vnd.github+json"},
                timeout=self.timeout,
            )
            body = response.json()
        except (requests.RequestException, ValueError):
            raise OAuthFailed("GitHub could not be reached") from None
        login = body.get("login") if isinstance(body, dict) and response.ok else None
        if not isinstance(login, str) or not login:
            raise OAuthFailed(f"GitHub did not say who you are ({response.status_code})")
        return login

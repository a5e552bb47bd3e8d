// A real OpenID Provider (panva's oidc-provider) on loopback, for the sign-in tests.
//
// Started by tests/test_sso.py, configured from the environment:
//   OIDC_TEST_PORT           port to listen on (127.0.0.1)
//   OIDC_TEST_CLIENT_ID      the one client's id, OIDC_TEST_CLIENT_SECRET its secret
//   OIDC_TEST_REDIRECT_URI   the client's one redirect URI
//   OIDC_TEST_ACCOUNTS       JSON: {"<login>": {"email": …, "email_verified": …, …}}
// Its own login page takes any password for a login named in OIDC_TEST_ACCOUNTS.
import Provider from 'oidc-provider';

const port = Number(process.env.OIDC_TEST_PORT);
const issuer = `http://127.0.0.1:${port}`;
const accounts = JSON.parse(process.env.OIDC_TEST_ACCOUNTS || '{}');

const configuration = {
  clients: [
    {
      client_id: process.env.OIDC_TEST_CLIENT_ID,
      client_secret: process.env.OIDC_TEST_CLIENT_SECRET,
      redirect_uris: [process.env.OIDC_TEST_REDIRECT_URI],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_post',
    },
  ],
  pkce: { required: () => true },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username', 'given_name', 'family_name'],
    groups: ['groups'],
  },
  cookies: { keys: ['test-only-cookie-key-0123456789'] },
  async findAccount(ctx, id) {
    const claims = accounts[id];
    if (!claims) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...claims }; } };
  },
};

const provider = new Provider(issuer, configuration);
provider.listen(port, '127.0.0.1', () => {
  console.log(`listening on ${issuer}`);
});

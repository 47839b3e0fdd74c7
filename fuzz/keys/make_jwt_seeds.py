#!/usr/bin/env python3
"""Makes the fixed key set of the `jwt_verify` target and its seed tokens.

Writes fuzz/keys/jwks.json (the public keys: RSA 2048, P-256, Ed25519) and the tokens they sign
into fuzz/seeds/jwt_verify/ and fuzz/seeds/jwt_parts/. The private keys are made fresh and thrown
away: running it again replaces the key set and every seed token together. Needs python3 with the
`cryptography` package (Debian: python3-cryptography).
"""
import base64, hashlib, hmac, json, os
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "..", "seeds")
ISS, AUD = "https://idp.example.com", "api"
EXP, IAT = 4102444800, 1700000000  # 2100-01-01, 2023-11-14


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def uint(n, size=None):
    size = size or (n.bit_length() + 7) // 8
    return n.to_bytes(size, "big")


rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ec_key = ec.generate_private_key(ec.SECP256R1())
ed_key = ed25519.Ed25519PrivateKey.generate()

rn = rsa_key.public_key().public_numbers()
en = ec_key.public_key().public_numbers()
ed_x = ed_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
jwks = {"keys": [
    {"kty": "RSA", "kid": "rsa-1", "use": "sig", "n": b64(uint(rn.n)), "e": b64(uint(rn.e))},
    {"kty": "EC", "kid": "ec-1", "use": "sig", "alg": "ES256", "crv": "P-256",
     "x": b64(uint(en.x, 32)), "y": b64(uint(en.y, 32))},
    {"kty": "OKP", "kid": "ed-1", "use": "sig", "alg": "EdDSA", "crv": "Ed25519", "x": b64(ed_x)},
]}
with open(os.path.join(HERE, "jwks.json"), "w") as f:
    json.dump(jwks, f, indent=1)
    f.write("\n")


def sign(alg, msg):
    if alg == "RS256":
        return rsa_key.sign(msg, padding.PKCS1v15(), hashes.SHA256())
    if alg == "PS256":
        return rsa_key.sign(msg, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
    if alg == "ES256":
        r, s = decode_dss_signature(ec_key.sign(msg, ec.ECDSA(hashes.SHA256())))
        return uint(r, 32) + uint(s, 32)
    if alg == "EdDSA":
        return ed_key.sign(msg)
    if alg == "HS256":  # algorithm confusion: the RSA public key as an HMAC secret
        pem = rsa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return hmac.new(pem, msg, hashlib.sha256).digest()
    return b""


def token(header, claims, alg=None):
    msg = (b64(json.dumps(header, separators=(",", ":")).encode()) + "." +
           b64(json.dumps(claims, separators=(",", ":")).encode()))
    return msg + "." + b64(sign(alg or header.get("alg"), msg.encode()))


good = {"iss": ISS, "aud": AUD, "exp": EXP, "iat": IAT, "nbf": IAT, "sub": "user-1",
        "client_id": "app", "scope": "api erp:write", "tenant": "MyStore"}
cases = {
    "rs256": ({"alg": "RS256", "kid": "rsa-1", "typ": "at+jwt"}, good),
    "ps256": ({"alg": "PS256", "kid": "rsa-1"}, good),
    "es256": ({"alg": "ES256", "kid": "ec-1"}, good),
    "eddsa": ({"alg": "EdDSA", "kid": "ed-1", "typ": "application/at+jwt"}, good),
    "rs256-no-kid": ({"alg": "RS256"}, good),
    "aud-array": ({"alg": "ES256", "kid": "ec-1"}, dict(good, aud=["other", AUD])),
    "exp-float": ({"alg": "EdDSA", "kid": "ed-1"}, dict(good, exp=4102444800.5)),
    "expired": ({"alg": "RS256", "kid": "rsa-1"}, dict(good, exp=1700000100)),
    "wrong-aud": ({"alg": "ES256", "kid": "ec-1"}, dict(good, aud="other")),
    "unknown-issuer": ({"alg": "ES256", "kid": "ec-1"}, dict(good, iss="https://evil.example.com")),
    "unknown-kid": ({"alg": "RS256", "kid": "rsa-9"}, good),
    "crit": ({"alg": "RS256", "kid": "rsa-1", "crit": ["exp"]}, good),
    "alg-none": ({"alg": "none"}, good),
    "hs256-confusion": ({"alg": "HS256", "kid": "rsa-1"}, good),
    "kid-wrong-family": ({"alg": "ES256", "kid": "rsa-1"}, good, "ES256"),
    "no-exp": ({"alg": "EdDSA", "kid": "ed-1"}, {k: v for k, v in good.items() if k != "exp"}),
}
for target in ("jwt_verify", "jwt_parts"):
    os.makedirs(os.path.join(SEEDS, target), exist_ok=True)
for name, case in cases.items():
    header, claims = case[0], case[1]
    t = token(header, claims, case[2] if len(case) > 2 else None)
    for target in ("jwt_verify", "jwt_parts"):
        with open(os.path.join(SEEDS, target, name), "w") as f:
            f.write(t)
# A bad signature: the good RS256 token with its last signature character changed.
t = token(*cases["rs256"])
with open(os.path.join(SEEDS, "jwt_verify", "bad-signature"), "w") as f:
    f.write(t[:-2] + ("A" if t[-2] != "A" else "B") + t[-1])
# Claims objects alone (jwt_parts checks a JSON object's claims directly).
with open(os.path.join(SEEDS, "jwt_parts", "claims.json"), "w") as f:
    json.dump(good, f)
with open(os.path.join(SEEDS, "jwt_parts", "claims-edge.json"), "w") as f:
    f.write('{"iss":"https://idp.example.com","aud":["api",7],"exp":1.8446744073709552e19,"nbf":-1,"iat":"x"}')

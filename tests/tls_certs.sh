#!/bin/sh
# Test certificates, made with the openssl command line into DIR (tests/tls_util.c calls it):
#   ca.pem ca.key             a CA (ECDSA P-256)
#   leaf.pem leaf.key         ECDSA P-256, CN=localhost, for localhost, 127.0.0.1 and ::1, by ca
#   expired.pem               the same names and key (leaf.key), expired yesterday
#   other.pem other.key       for other.example only, by ca
#   rogue-ca.pem              another CA nobody trusts
#   rogue.pem rogue.key       localhost again, by rogue-ca
# and with "rsa" as second argument also:
#   rsa.pem rsa.key           RSA-2048, the leaf's names, by ca
# and with "big":
#   big.pem                   leaf.pem followed by 120 more certificates (about 75 KB: a
#                             first flight larger than what a socket takes at once)
set -eu
dir=$1
what=${2:-}
cd "$dir"
ec="-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
names='subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1'

ca() { # name subject
    openssl req -x509 $ec -keyout "$1.key" -out "$1.pem" -days 2 -subj "/CN=$2" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
        2>/dev/null
}
leaf() { # name key-options subject extensions ca days
    openssl req $2 -keyout "$1.key" -out "$1.csr" -subj "$3" 2>/dev/null
    printf '%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n' "$4" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA "$5.pem" -CAkey "$5.key" -CAcreateserial -days "$6" \
        -extfile "$1.ext" -out "$1.pem" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}

case $what in
rsa)
    leaf rsa "-newkey rsa:2048 -nodes" "/CN=localhost/O=weft tests" "$names" ca 2
    ;;
big)
    cp leaf.pem big.pem
    i=0
    while [ $i -lt 120 ]; do # padding: certificates the peer receives and ignores
        cat ca.pem rogue-ca.pem >>big.pem
        i=$((i + 2))
    done
    ;;
*)
    ca ca "weft test CA"
    ca rogue-ca "weft rogue CA"
    leaf leaf "$ec" "/CN=localhost/O=weft tests" "$names" ca 2
    # Same key, validity ending before it starts: expired by any clock.
    openssl req -new -key leaf.key -out expired.csr -subj "/CN=localhost/O=weft tests" 2>/dev/null
    printf '%s\n' "$names" >expired.ext
    openssl x509 -req -in expired.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days -1 \
        -extfile expired.ext -out expired.pem 2>/dev/null
    rm -f expired.csr expired.ext
    leaf other "$ec" "/CN=other.example" "subjectAltName=DNS:other.example" ca 2
    leaf rogue "$ec" "/CN=localhost" "$names" rogue-ca 2
    ;;
esac
touch "done-${what:-base}"

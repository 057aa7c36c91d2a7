// Test and benchmark helper (superusers only): makes `n` users at once, with one pre-hashed
// password and no bcrypt per user, and returns a token for each. A benchmark of 10,000 members
// would otherwise spend minutes hashing passwords. Never installed outside the test harness.
routerAdd(
  "POST",
  "/api/relay-test/users",
  (e) => {
    const body = e.requestInfo().body;
    const n = Number(body.n);
    const prefix = String(body.prefix);
    const id = (i) => prefix + String(i).padStart(15 - prefix.length, "0");
    const now = new DateTime().string();
    $app.runInTransaction((tx) => {
      for (let i = 0; i < n; i++) {
        tx.db()
          .newQuery(
            "INSERT INTO users (id, email, password, tokenKey, name, verified, emailVisibility, created, updated) " +
              "VALUES ({:id}, {:email}, {:password}, {:tokenKey}, {:name}, 0, 0, {:now}, {:now})",
          )
          .bind({
            id: id(i),
            email: id(i) + "@relay.test",
            password: String(body.hash),
            tokenKey: $security.randomString(50),
            name: prefix + i,
            now: now,
          })
          .execute();
      }
    });
    const out = [];
    for (let i = 0; i < n; i++) {
      out.push({ id: id(i), token: $app.findRecordById("users", id(i)).newAuthToken() });
    }
    return e.json(200, out);
  },
  $apis.requireSuperuserAuth(),
);

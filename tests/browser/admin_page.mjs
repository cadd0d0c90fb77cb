// Drives the admin page: enter the token, press "Back up now", wait for the new backup in
// the list, follow its download link. Prints one JSON line with what it saw.
// Usage: node admin_page.mjs BASE_URL TOKEN SCREENSHOT DOWNLOAD_TO
import { chromium } from "playwright-core";

const [base, token, screenshot, downloadTo] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
  timeout: 60000,
});
try {
  const page = await browser.newPage({ acceptDownloads: true });
  page.setDefaultTimeout(30000);
  const problems = [];
  page.on("pageerror", (e) => problems.push(String(e)));
  page.on("requestfailed", (r) => problems.push("request failed: " + r.url()));
  await page.goto(base + "/admin");
  await page.fill("#token", token);
  await page.click("#login-go");
  await page.waitForSelector("#targets tbody tr");
  const rowsBefore = await page.locator("#backups tbody tr").count();
  await page.click("#backup-now");
  await page.waitForFunction(
    (n) => document.querySelectorAll("#backups tbody tr").length > n,
    rowsBefore,
  );
  const rowsAfter = await page.locator("#backups tbody tr").count();
  const progress = await page.textContent("#progress");
  const newest = page.locator("#backups tbody tr").first();
  const id = await newest.getAttribute("data-id");
  const link = newest.locator("a.download");
  const file = await link.textContent();
  const [download] = await Promise.all([page.waitForEvent("download"), link.click()]);
  await download.saveAs(downloadTo);
  const tokenInSession = await page.evaluate(() => sessionStorage.getItem("dbkeep-admin-token"));
  const tokenInLocal = await page.evaluate(() => Object.keys(localStorage).length);
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({
    rowsBefore, rowsAfter, progress, id, file,
    suggested: download.suggestedFilename(),
    tokenKeptInSession: tokenInSession === token,
    localStorageKeys: tokenInLocal,
    problems,
  }));
} finally {
  await browser.close();
}

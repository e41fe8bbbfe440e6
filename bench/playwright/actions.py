"""The browser benchmark's 20 actions, done by Playwright for Python with the
machine's Chromium, for comparison with Flywheel. Prints one JSON object.

usage: actions.py URL CHROMIUM_PATH RUNS
"""
import json
import sys
import time

from playwright.sync_api import sync_playwright


def main():
    url, chromium, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    per_action, to_first = [], []
    with sync_playwright() as p:
        for _ in range(runs):
            started = time.perf_counter()
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            t0 = time.perf_counter()
            page.goto(url)
            to_first.append((time.perf_counter() - started) * 1000)
            for i in range(1, 10):
                page.fill(f"#f{i}", f"value {i}")
            for _ in range(10):
                page.click("#add")
            total = time.perf_counter() - t0
            count = page.eval_on_selector("#count", "el => el.textContent")
            assert count == "10", count
            per_action.append(total * 1000 / 20)
            browser.close()
    print(json.dumps({"per_action_ms": per_action, "launch_to_first_action_ms": to_first}))


if __name__ == "__main__":
    main()

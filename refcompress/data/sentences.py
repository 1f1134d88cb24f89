"""Fixed English sentence sets for measuring a compressed sentence encoder.

Written for this library (no download): the *evaluation* set mixes paraphrase pairs (two
wordings of one meaning), unrelated sentences and lengths from a single word to long
paragraphs (3 to about 120 WordPiece tokens with [CLS] and [SEP]); the *calibration* set is
disjoint from it (no sentence in common) and of the same kinds, for choosing activation
ranges, Hessians and scales.  Keeping the two apart is what makes a fidelity number honest:
a method calibrated on the sentences it is scored on can overfit them.

``EVAL_PAIRS[i]`` are paraphrases of each other; :data:`EVAL_SENTENCES` is every pair's two
sentences followed by the single sentences.
"""

from __future__ import annotations

__all__ = ["EVAL_PAIRS", "EVAL_SINGLES", "EVAL_SENTENCES", "CALIBRATION_SENTENCES"]

EVAL_PAIRS = (
    ("A man is playing a guitar on the street.", "Someone strums a guitar outside on the sidewalk."),
    ("The cat is sleeping on the warm windowsill.", "A cat naps in the sun by the window."),
    ("How do I reset my password?", "What are the steps to change a forgotten password?"),
    ("The stock market fell sharply today.", "Share prices dropped a lot on the exchange this afternoon."),
    ("She finished the marathon in under four hours.",
     "Her marathon time was less than four hours."),
    ("The restaurant was closed for renovations.", "They shut the diner while it was being remodelled."),
    ("Children are building a sandcastle at the beach.", "Kids make a castle out of sand by the sea."),
    ("The meeting has been moved to Thursday.", "We rescheduled the meeting for Thursday."),
    ("Drink plenty of water when it is hot outside.", "Stay hydrated during hot weather."),
    ("The train was delayed because of snow on the tracks.",
     "Snow on the rails made the train late."),
    ("He could not find his keys anywhere.", "His keys were nowhere to be found."),
    ("The new phone has a much better camera.", "This latest smartphone takes far sharper photos."),
    ("Please turn off the lights when you leave.", "Switch the lights off on your way out, please."),
    ("The company hired twenty new engineers this year.",
     "Twenty engineers joined the firm over the past year."),
    ("A woman is slicing tomatoes in the kitchen.", "Someone cuts tomatoes on a kitchen counter."),
    ("Global temperatures have risen over the last century.",
     "The planet has warmed considerably in the past hundred years."),
    ("Where is the nearest pharmacy?", "Is there a drugstore close by?"),
    ("The movie was boring and far too long.", "The film dragged on and was dull."),
    ("Our flight to Lisbon leaves at seven in the morning, so we should be at the airport by five.",
     "We need to reach the airport around five because the plane to Lisbon departs at 7 a.m."),
    ("Regular exercise lowers the risk of heart disease.",
     "Working out often makes heart problems less likely."),
    ("The library will extend its opening hours during exam season, staying open until midnight "
     "from Monday to Friday so that students have a quiet place to revise.",
     "During exams the library stays open later, until twelve at night on weekdays, giving "
     "students somewhere calm to study."),
    ("The dog barked at the mail carrier.", "The postman was barked at by the dog."),
    ("Thank you very much.", "Many thanks."),
    ("The committee rejected the proposal after a long debate about its cost, its impact on the "
     "neighbourhood, and whether the city could afford to maintain the new park for decades.",
     "After arguing at length over the expense, the effect on local residents and the long-term "
     "upkeep of the park, the committee voted the plan down."),
)

EVAL_SINGLES = (
    "Hello",
    "Stop.",
    "Yes, please.",
    "Quantum computers use qubits instead of bits.",
    "The recipe calls for two cups of flour and one egg.",
    "Mount Everest is the highest mountain above sea level.",
    "I left my umbrella on the bus this morning.",
    "The orchestra performed Beethoven's ninth symphony to a full hall.",
    "Volcanic eruptions can affect the climate for several years.",
    "Is this seat taken?",
    "The invoice must be paid within thirty days.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "My grandmother grows tomatoes, beans and zucchini in her garden every summer.",
    "The referee showed the defender a red card in the final minute.",
    "Encryption protects data by turning it into unreadable ciphertext.",
    "A small boat drifted slowly across the calm lake at dawn.",
    "The museum's new exhibition explores the history of printing, from carved wooden blocks in "
    "East Asia to Gutenberg's movable type and the steam-powered presses of the nineteenth "
    "century, with working replicas that visitors can operate themselves under the guidance "
    "of trained volunteers on weekend afternoons.",
    "To apply for the scholarship, students must submit a personal statement of no more than "
    "five hundred words, two letters of recommendation from teachers who know their work well, "
    "an official transcript, and proof of enrolment for the coming academic year; incomplete "
    "applications will not be considered, and late submissions received after the fifteenth of "
    "March cannot be accepted under any circumstances whatsoever, although candidates who were "
    "ill or affected by a family emergency may write to the admissions office, which will "
    "review each request individually and reply within ten working days.",
    "Honeybees communicate the direction and distance of flowers to their hive mates through a "
    "waggle dance, whose angle relative to vertical encodes the direction of the food source "
    "relative to the sun, while the duration of the waggle run tells the other bees how far "
    "they will have to fly to reach it, an astonishing system first decoded by the Austrian "
    "biologist Karl von Frisch, who shared the Nobel Prize in 1973 for this work on animal "
    "behaviour, and whose experiments with coloured dishes of sugar water are still repeated "
    "by students today.",
    "When the power went out across the whole valley on the coldest night of the year, the "
    "neighbours gathered in the school gym, which had an old diesel generator, and spent the "
    "night sharing blankets, soup and stories while the repair crews worked in the snow to "
    "reconnect the broken line, finally restoring electricity just after sunrise to the relief "
    "of everyone, especially the families with small children and the elderly residents who "
    "had been worried about their heating and medicine.",
    "Error 404: page not found.",
    "The bridge was closed after engineers found cracks in two of its supports.",
    "Please remember to water the plants while I'm away.",
    "The spacecraft entered orbit around Jupiter after a five-year journey.",
    "Interest rates were left unchanged at the central bank's latest meeting.",
)

EVAL_SENTENCES = tuple(s for pair in EVAL_PAIRS for s in pair) + EVAL_SINGLES

CALIBRATION_SENTENCES = (
    "Good evening.",
    "Turn left at the second traffic light.",
    "The bakery sells fresh bread every morning.",
    "A group of hikers reached the summit before noon.",
    "Can you recommend a good book about history?",
    "The printer on the third floor is out of paper again.",
    "Scientists discovered a new species of frog in the rainforest.",
    "The concert was cancelled due to heavy rain.",
    "He apologised for arriving late to the interview.",
    "Our team won the championship for the third year in a row.",
    "The river flooded several villages after the storm.",
    "I usually take the bus to work, but today I walked.",
    "The software update fixed a bug that crashed the app on startup.",
    "Vaccines train the immune system to recognise a virus.",
    "The old lighthouse has been turned into a small hotel.",
    "She speaks French, Spanish and a little Japanese.",
    "Add salt to the boiling water before the pasta.",
    "The parliament passed the new budget by a narrow margin.",
    "My laptop battery only lasts about two hours now.",
    "A fox crossed the road in front of our car.",
    "The painting was sold at auction for a record price.",
    "Wind turbines generate electricity from moving air.",
    "The children laughed at the clown's silly tricks.",
    "Please send me the report by Friday afternoon.",
    "The hospital opened a new wing for children.",
    "He repaired the bicycle's flat tyre in ten minutes.",
    "Rainforests are home to more than half of the world's species.",
    "The password must contain at least twelve characters.",
    "We watched the sunset from the top of the hill.",
    "The price of coffee has doubled in two years.",
    "Astronauts on the station grow lettuce in space.",
    "The teacher asked the students to read chapter five.",
    "A loud noise woke everyone up in the middle of the night.",
    "The city plans to build a new tram line next year.",
    "My neighbour's cat keeps coming into our garden.",
    "The chess champion defended her title successfully.",
    "Fresh snow covered the mountains overnight.",
    "The airline lost my luggage on the way to Berlin.",
    "Solar panels were installed on the school roof.",
    "The detective finally solved the mysterious case.",
    "Where did you buy those shoes?",
    "The factory reduced its emissions by forty percent.",
    "An earthquake shook the coastal town early this morning.",
    "We need more volunteers for the charity run.",
    "The baby smiled for the first time today.",
    "Fix the leaking tap in the bathroom, please.",
    "The author signed copies of her new novel at the bookstore.",
    "Traffic was heavy on the motorway because of an accident.",
    "Whales migrate thousands of kilometres every year to feed and breed in different oceans.",
    "The documentary follows a family of elephants through a year of drought on the savannah, "
    "showing how the oldest female leads the herd to water she remembers from decades ago.",
    "If the server does not respond within five seconds, the client retries the request up to "
    "three times with an exponentially growing delay before reporting a network error to the "
    "user, which keeps short outages from turning into visible failures.",
    "The town council announced that the historic market square will be closed to cars from "
    "next spring, with new benches, trees and a fountain, after a survey showed that most "
    "residents wanted more space for walking, cafes and the weekly farmers' market.",
    "Learning a musical instrument as an adult takes patience: progress is slow at first, the "
    "fingers do not obey, and practice sessions feel repetitive, but after a few months simple "
    "pieces begin to sound like music and the effort becomes a pleasure rather than a chore.",
    "The central idea of the theory of evolution by natural selection is that individuals with "
    "traits better suited to their environment are more likely to survive and reproduce, so "
    "those traits become more common in later generations, slowly changing the population over "
    "very long periods of time.",
    "During the night shift the nurses check every patient's temperature, blood pressure and "
    "medication every four hours, write down anything unusual in the chart, and call the "
    "doctor on duty immediately if a patient's condition gets worse or a reading falls outside "
    "the safe range given by the care plan.",
    "The old railway line that once carried coal from the mines to the harbour has been turned "
    "into a cycling and walking path more than forty kilometres long, passing through tunnels, "
    "over restored viaducts and past abandoned stations that now serve as cafes, small museums "
    "and bicycle repair shops, and on summer weekends thousands of families ride along it, "
    "stopping to swim in the river or to picnic in the meadows where the freight yards used "
    "to be, while volunteers keep the surface smooth and plant wildflowers along the edges.",
    "OK",
    "Thanks a lot!",
    "Absolutely not.",
    "The keyboard is missing the letter Q.",
    "The museum is free on the first Sunday of every month.",
    "Our apartment overlooks a busy square full of street musicians.",
    "The government introduced a tax on sugary drinks.",
    "Ancient Egyptians built the pyramids as tombs for their kings.",
    "I prefer tea to coffee in the afternoon.",
)

# More calibration text: Hessian-based methods (GPTQ, SparseGPT, data-aware SVD) need many
# more calibration tokens than a layer has inputs (up to 1536 here) or they fit the
# calibration set instead of the layer.
_EXTRA_CALIBRATION = (
    "Hi there.",
    "Sounds good to me.",
    "Not today.",
    "Why not?",
    "See you tomorrow!",
    "Happy birthday, Anna.",
    "Door's open.",
    "Two coffees, please.",
    "Nice work.",
    "Wait here.",
    "Is it raining?",
    "I'm sorry.",
    "Call me later.",
    "Done.",
    "What time is it?",
    "Check the oven.",
    "Welcome back!",
    "No worries.",
    "Try again.",
    "Good luck on your exam.",
    "The train to Vienna leaves from platform nine.",
    "Our dishwasher makes a strange grinding noise after every cycle.",
    "Remember to back up your files before installing the update.",
    "The hotel offers free breakfast between seven and ten.",
    "She adopted two kittens from the local shelter last week.",
    "The quarterly report shows a twelve percent rise in revenue.",
    "Heavy fog has delayed flights at the northern airport.",
    "Can you send me the slides from yesterday's presentation?",
    "The new bridge will connect the island to the mainland by 2030.",
    "Our grandparents met at a dance hall in 1962.",
    "Most spiders are harmless to humans.",
    "The recipe says to let the dough rest for an hour.",
    "He forgot his umbrella and got soaked on the way home.",
    "The court ruled that the contract was not valid.",
    "This vacuum cleaner is quiet, light and surprisingly powerful.",
    "I would not recommend this phone case; it cracked within a week.",
    "The museum's dinosaur skeleton is over twenty metres long.",
    "Press and hold the power button for ten seconds to restart the router.",
    "A rainbow appeared over the valley after the storm.",
    "The goalkeeper saved a penalty in the ninetieth minute.",
    "Lemons, garlic and olive oil make a simple dressing.",
    "Dear Mr. Patel, thank you for your quick reply to my question.",
    "The company announced layoffs affecting about three hundred workers.",
    "Jupiter has more than ninety known moons.",
    "Our neighbours are renovating their kitchen, so it is noisy all day.",
    "Please find attached the signed copy of the agreement.",
    "The library card is free for everyone who lives in the city.",
    "Antibiotics do not work against viral infections such as the common cold.",
    "The kids built a fort out of cardboard boxes and old blankets.",
    "Temperatures will drop below freezing tonight in the mountains.",
    "My flight was cancelled, so I took the night bus instead.",
    "The orchestra rehearsed the symphony for three weeks before the premiere.",
    "\"Where are you going?\" she asked, without looking up from her book.",
    "Add two eggs (at room temperature) and mix until smooth.",
    "The meeting is at 3:30 pm in room B-204; bring your laptop.",
    "Prices rose by 4.2% in October, the fastest pace since March.",
    "Tokyo, Paris and New York are among the most visited cities in the world.",
    "The software crashes whenever I open a file larger than two gigabytes.",
    "Our customer service team is available Monday to Friday, 9 am to 6 pm.",
    "I've been learning to play the piano for about six months now.",
    "The hikers followed the river until they reached an abandoned mill.",
    "Eating more fibre can help with digestion.",
    "The startup raised fifteen million dollars in its first funding round.",
    "Wildfires destroyed thousands of hectares of forest this summer.",
    "The teacher praised the class for their excellent science projects.",
    "Don't forget to feed the fish while we're on holiday.",
    "The new law requires all bicycles to have lights at night.",
    "He scored the winning goal with a header in extra time.",
    "Coral reefs are threatened by warming oceans and pollution.",
    "My laptop fan gets very loud when I run video calls.",
    "The bakery on the corner sells the best cinnamon rolls in town.",
    "Scientists measured the speed of the glacier using satellite images.",
    "This blender is powerful enough to crush ice in seconds.",
    "Could you please lower the music a little? The baby is sleeping.",
    "The parade will start at noon and end near the river.",
    "A strong password mixes letters, numbers and symbols.",
    "The detective noticed a muddy footprint near the window.",
    "The elections will be held on the first Sunday of May.",
    "The ferry crossing takes about forty minutes in calm weather.",
    "I can't believe how fast this year has gone by.",
    "Migrating birds use the Earth's magnetic field to find their way.",
    "The restaurant received its first star from the food critics.",
    "Turn off the tap while you brush your teeth to save water.",
    "The printer says it is out of cyan ink, but I only print in black.",
    "They signed a five-year lease for a small office downtown.",
    "The hospital is looking for volunteers to read to young patients.",
    "Our team finished the project two days ahead of schedule.",
    "The storm knocked down power lines across the county.",
    "She translated the novel from Portuguese into English.",
    "Quantum mechanics describes the behaviour of very small particles.",
    "The gym is closed on public holidays.",
    "My order arrived damaged, and I would like a refund.",
    "The children planted sunflowers along the school fence.",
    "The river froze solid for the first time in twenty years.",
    "A good night's sleep improves memory and concentration.",
    "The band's new album mixes jazz, folk and electronic music.",
    "Tickets for the final sold out within an hour.",
    "The mechanic said the brakes need to be replaced soon.",
    "In 1969, astronauts walked on the Moon for the first time.",
    "The village holds a cheese festival every autumn.",
    "When you arrive at the station, take the blue line two stops north and then walk past the "
    "cathedral; our building is the one with the green door, and the office is on the fourth "
    "floor, just to the left of the lift.",
    "The report concludes that the city's bus network could carry twice as many passengers if "
    "the routes were simplified, the buses ran every ten minutes during the day, and tickets "
    "could be bought on a phone instead of only at kiosks that close early in the evening.",
    "Thank you for contacting support. We have received your request about the missing "
    "package, and a member of our team will look into it within two working days; in the "
    "meantime, you can track the shipment with the number in your confirmation email.",
    "Every spring the farmers in the valley wait for the last frost before planting, because "
    "a single cold night in April can destroy a whole field of young beans, and the old "
    "almanac on the kitchen wall is trusted more than any weather forecast on the radio.",
    "The researchers trained the robot to sort recycling by showing it thousands of pictures "
    "of bottles, cans and paper, and after a month it could pick the right bin for most "
    "items, although crumpled foil and greasy pizza boxes still confused it regularly.",
    "My first job was washing dishes in a busy seaside restaurant, where the summer evenings "
    "were so hot and hectic that we counted the plates in hundreds, and the cook sang old "
    "songs at the top of his voice to keep everyone going until the last table left.",
    "To replace the filter, switch off the machine, unplug it, open the panel at the back by "
    "turning the two screws anticlockwise, slide the old filter out, insert the new one with "
    "the arrow pointing up, close the panel and run an empty cycle before using it again.",
    "The documentary about deep-sea creatures shows fish that make their own light, crabs "
    "that live beside boiling volcanic vents, and giant worms without mouths that depend "
    "entirely on bacteria inside their bodies, in a world that sunlight has never reached.",
    "After months of negotiation, the two companies agreed to merge, creating the largest "
    "maker of electric buses in Europe, although regulators must still approve the deal and "
    "unions have asked for guarantees that no factories will close in the next five years.",
    "Grandma's secret for the perfect tomato sauce was patience: she let it simmer on the "
    "lowest flame for most of the afternoon, stirring now and then with a wooden spoon, and "
    "added a pinch of sugar and a few basil leaves only right at the very end.",
    "Although the museum was built to hold five hundred visitors at once, more than two "
    "thousand people queued outside on the opening day, so the director decided to keep the "
    "doors open until midnight and handed out free tea to everyone waiting in the cold.",
    "The software engineer explained that the bug only appeared when two users edited the "
    "same document at exactly the same moment, which is why it had escaped every test, and "
    "that the fix was a lock that makes the second edit wait for the first to finish.",
)

CALIBRATION_SENTENCES = CALIBRATION_SENTENCES + _EXTRA_CALIBRATION
